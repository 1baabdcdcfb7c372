"""`python -m tests.mock_main NUM_EXAMPLES [asyncjax.main flags]`: the main job under
tfds.testing.mock_data, so TFDS-backed configs run end to end offline."""
import sys

import tensorflow_datasets as tfds
from absl import app

from asyncjax import main

if __name__ == "__main__":
    num_examples = int(sys.argv.pop(1))
    with tfds.testing.mock_data(num_examples=num_examples):
        app.run(main.main)
