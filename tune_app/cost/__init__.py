"""What a sweep costs: the estimate before it trains (``--plan``), the GPU share each trial asks for
(``--gpus-per-trial auto``) and the device-hour budget it may spend (``--budget-hours``)."""
