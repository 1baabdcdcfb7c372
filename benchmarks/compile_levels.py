"""Compile time and run time of a ResNet-8 init and training step at an LLVM optimisation level:
what tests/conftest.py's `--xla_backend_optimization_level=1` is chosen on (RESULTS.md "Test suite").

    XLA_FLAGS=--xla_backend_optimization_level=1 JAX_PLATFORMS=cpu python benchmarks/compile_levels.py

Run it once per level (the flag is read when XLA starts), one after the other, the CPU named beside.
"""
import time

import jax
import jax.numpy as jnp

from asyncjax.models import make_backbone


def main():
    model = make_backbone("resnet8")
    image = jnp.zeros((1, 32, 32, 3))
    start = time.time()
    init = jax.jit(lambda key: model.init(key, image, train=False)).lower(jax.random.key(0)).compile()
    print("init compile", round(time.time() - start, 2), "s")
    variables = init(jax.random.key(0))
    batch = jnp.ones((16, 32, 32, 3))

    def loss(variables, images):
        out, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return jnp.mean(out["features"] ** 2) if isinstance(out, dict) else jnp.mean(out ** 2)

    start = time.time()
    grad = jax.jit(jax.grad(loss)).lower(variables, batch).compile()
    print("grad compile", round(time.time() - start, 2), "s")
    start = time.time()
    for _ in range(5):
        result = grad(variables, batch)
    jax.block_until_ready(result)
    print("5 grad steps", round(time.time() - start, 3), "s")


if __name__ == "__main__":
    main()
