"""Kept only for tests/test_docs.py's `from tests.support import REPO` (its owner moves it to
tests.helpers.stack); everything else the tests share is in tests/helpers/."""

from seckill_stack.services import REPO

__all__ = ["REPO"]
