"""Data labkit builds or fetches offline: the pretraining corpus (and, elsewhere, task data)."""
