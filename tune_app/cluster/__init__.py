"""Ray under tune_app: starting or joining it (``session``), a trainable as a Ray Tune trial (``adapter``), run
directories in object storage (``storage``), Ray's console and the run-directory watch (``console``), and every
private Ray or Optuna name tune_app uses (``ray_private``)."""
