"""The shared fixtures are what they promise: deterministic images, a clean single process, seeded RNGs."""

import os
import random

import numpy as np
import torch

from tests.conftest import LAUNCHER_VARIABLES, shape_image


def test_shape_images_are_the_same_every_time():
    first, caption = shape_image(3)
    again, same_caption = shape_image(3)
    assert np.array_equal(np.asarray(first), np.asarray(again)) and caption == same_caption
    assert not np.array_equal(np.asarray(first), np.asarray(shape_image(4)[0]))


def test_no_launcher_variables_and_seeded_global_rngs():
    assert [name for name in LAUNCHER_VARIABLES if name in os.environ] == []
    assert random.random() == random.Random(0).random()
    assert np.random.rand() == np.random.RandomState(0).rand()
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(0)))
