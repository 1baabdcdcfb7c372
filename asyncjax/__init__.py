"""asyncjax: Asynchronous Modeling (dual-phase long-tailed recognition) in JAX/Flax."""

__version__ = "0.1.0"
