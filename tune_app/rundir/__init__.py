"""A run directory, the one place a sweep's results live: the names of its files (``layout``), its trials read
back (``reader``) and turned into tables (``tables``), files written whole (``atomic``) and one sweep at a time
(``lock``)."""
