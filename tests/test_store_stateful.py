"""Stateful test: the record store against the plain dict model, with power cuts as rules."""

from __future__ import annotations

from hypothesis import settings

from tests.store_machine import StoreMachine

StoreMachine.TestCase.settings = settings(settings(), stateful_step_count=25)
TestStoreMachine = StoreMachine.TestCase
