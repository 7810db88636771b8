"""What every framework adapter shares: a missing or too old framework is a clear ImportError naming the
extra to install, and a newer one than tested a warning naming the tested versions."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from polyfocal.integrations._versions import require


def test_a_missing_framework_names_its_extra():
    with pytest.raises(ImportError, match=r"needs polyfocal_no_such_framework: pip install 'polyfocal\[lightning\]'"):
        require("polyfocal_no_such_framework", "1.0", "lightning")


def test_an_old_or_untested_version_is_named():
    with pytest.raises(ImportError, match=r"needs torch >= 99.0; found 2\."):
        require("torch", "99.0", "transformers")
    with pytest.warns(UserWarning, match=r"tested with torch >= 2.0, < 2.1; found 2\."):
        require("torch", "2.0", "transformers", tested_below="2.1")


def test_a_version_below_the_tested_range_is_named():
    with pytest.warns(UserWarning, match=r"tested with torch >= 98\.0, < 99\.0; found 2\."):
        require("torch", "2.0", "timm", tested_below="99.0", tested_from="98.0")


@pytest.mark.parametrize("framework", ["timm", "ultralytics"])
def test_a_vision_adapter_without_its_framework_names_the_extra_and_the_environment(framework):
    """timm and Ultralytics need torchvision, which the main environment (torch 2.13) can't load: importing
    their adapters there says which extra to install and where."""
    if importlib.util.find_spec(framework) is not None:
        pytest.skip(f"{framework} is installed here")
    with pytest.raises(ImportError, match=rf"needs {framework}: pip install 'polyfocal\[{framework}\]'; .*torchvision.*"
                                          r"vision test environment: bash \.ci/vision"):
        importlib.import_module(f"polyfocal.integrations.{framework}")
