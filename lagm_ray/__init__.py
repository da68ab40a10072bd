"""lagm_ray: LAGM (ICLR 2022) as a Ray-based hyperparameter and ablation runner.

The core (models, gm, trainer, metrics, data) is plain torch; Ray and MLflow live only in
lagm_ray.distributed and lagm_ray.tracking.
"""

__version__ = "0.1.0"
