"""家访助手 homevisit: home-visit check-ins over the work chat apps teachers already use."""

__version__ = "0.1.0"
