"""Bitbucket webhooks: the receiver (receiver.py), matching each mirror's sync to the push it completes
(matching.py), their metrics (collector.py), the CI gate (gate.py) and the webhooks' setup (setup.py)."""
