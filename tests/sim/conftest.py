"""pytest rewrites the asserts of the linearizability checker's reference
helpers as it does a test's, so a witness that breaks the definition shows
its values."""

import pytest

pytest.register_assert_rewrite("tests.sim.linearizability_reference")
