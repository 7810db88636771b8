"""What every framework adapter shares: a missing or too old framework is a clear ImportError naming the
extra to install, and a newer one than tested a warning naming the tested versions."""

from __future__ import annotations

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
