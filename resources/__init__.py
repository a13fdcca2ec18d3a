"""Example resource kinds, and the devices they talk to."""
