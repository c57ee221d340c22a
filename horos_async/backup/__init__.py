"""The backup pipeline: plan → per-study jobs → verified ZIP → ledger (docs/design/architecture.md).

``engine`` runs one ``horos-backup run``; ``job`` exports one study; ``archive`` builds and verifies one
ZIP (blocking, no asyncio); ``planner`` decides what is due; ``reconcile`` squares the backup folder with
the ledger; ``months`` keeps the month markers. Nothing here imports a front end.
"""
