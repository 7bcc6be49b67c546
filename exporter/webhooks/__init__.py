"""The webhooks source: Bitbucket's push and mirror-synchronized webhooks, and the CI gate built on them.

``config`` (the ``webhooks`` block), ``receiver`` (the signed endpoint), ``matching`` (each mirror's sync to the push
it completes), ``collector`` (its families), ``gate`` (is a commit on each mirror, with proof), ``wait`` (the CLI
client of the gate), ``setup`` (webhooks apply and status, and Bitbucket's delivery statistics)."""
