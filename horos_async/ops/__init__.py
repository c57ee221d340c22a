"""Operator commands' work: doctor, verify, restore, catalog, launchd, rebuild-ledger, plan, and Horos's
index (index_copy, index_snapshot, index_store, index_restore, index_upkeep, presence, doctor_horos).

Each module does the work of one command and returns data; ``horos_async.cli`` parses flags and prints.
"""
