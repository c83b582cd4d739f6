"""Deterministic simulation of handsets and the reference server, and the durability fuzzer.

``world`` runs one seeded simulation; ``network``, ``nemesis`` and ``workload`` are its parts;
``ledger`` and ``oracle`` check it; ``trace``, ``story``, ``shrink`` and ``runner`` make the
campaign of ``sidekick fuzz``; ``stateful`` is the Hypothesis state machine over the same world.
docs/FUZZING.md explains it all.
"""
