"""``from k1lib.imports import *``: the names the README's examples use, in one import."""

import math
import os
import time
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn, optim

import k1lib

__all__ = ["F", "k1lib", "math", "nn", "np", "optim", "os", "partial", "plt", "time", "torch"]
