"""A deliberately slow model for interruption tests (importable, so that it pickles)."""

import os
import time

from miso_bench.models import MODELS, register_model
from miso_bench.models.trees import MajorityModel


class SlowMajority(MajorityModel):
    """The majority model, sleeping ``$MISO_TEST_FIT_SLEEP`` seconds in every fit."""

    def _fit(self, X, y, val):
        time.sleep(float(os.environ.get("MISO_TEST_FIT_SLEEP", "0")))
        super()._fit(X, y, val)


if "slow_majority" not in MODELS:
    register_model("slow_majority", SlowMajority, features=("s2",))


from miso_bench.models.trees import ForestModel  # noqa: E402


class SlowForest(ForestModel):
    """The forest, sleeping ``$MISO_TEST_FIT_SLEEP`` seconds in every fit (family rf)."""

    def _fit(self, X, y, val):
        time.sleep(float(os.environ.get("MISO_TEST_FIT_SLEEP", "0")))
        super()._fit(X, y, val)


if "slow_forest" not in MODELS:
    register_model("slow_forest", SlowForest, features=("s2",), family="rf")
