"""Ray layers around the pure-torch core: Ray Train (train.py), Ray Tune + Optuna (sweep.py)."""
