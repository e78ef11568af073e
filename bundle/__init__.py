"""The model bundle: the one contract between the offline half (training/, export/) and the
service. Torch-free by design: the service imports this package, never training/ or export/."""
