"""The measuring and deciding core of pytest-stressguard. Never imports pytest or xdist."""
