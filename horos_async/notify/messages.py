"""What the alerts say, in English and Brazilian Portuguese (``[notify] language``).

Studies are named by Study Instance UID only (``log_patient_names`` adds nothing here: an alert leaves
the clinic by e-mail or a phone push, docs/design/durability.md §5). The technical detail (the error
message the run printed) stays in English: it names files and commands as they are.
"""

from __future__ import annotations

from typing import Dict

TITLES: Dict[str, Dict[str, str]] = {
    "en": {
        "SENTINEL_MISSING": "runs refused: the sentinel file is missing (backup volume not mounted?)",
        "DATABASE_UNAVAILABLE": "runs refused: the Horos database is unavailable",
        "VOLUME_UNAVAILABLE": "runs refused: a volume is missing or read-only",
        "LEDGER_DAMAGED": "runs refused: the backup ledger is damaged",
        "HOROS_DB_SHRANK": "runs refused: the Horos database shrank or was replaced (HOROS_DB_SHRANK)",
        "DISK_FULL": "the backup disk is full (DISK_FULL)",
        "DISK_LOW": "the backup disk is low on free space (DISK_LOW)",
        "INTERNAL_ERROR": "runs fail with an unexpected error",
        "RUN_FAILED": "runs fail",
        "STALLED": "the backup is stalled",
        "NO_PROGRESS": "no study exported for 24 hours while studies are due",
        "ZIP_FAIL": "studies could not be zipped (ZIP_FAIL)",
        "INDEX_SNAPSHOT_SKIPPED": "no consistent snapshot of Horos's index for a day (INDEX_SNAPSHOT_SKIPPED)",
        "VERIFY_BAD": "verify found bad or missing ZIPs",
        "SUMMARY_daily": "daily summary",
        "SUMMARY_weekly": "weekly summary",
        "TEST": "test message",
    },
    "pt": {
        "SENTINEL_MISSING": "execuções recusadas: o arquivo sentinela não existe (disco de backup desmontado?)",
        "DATABASE_UNAVAILABLE": "execuções recusadas: o banco do Horos está indisponível",
        "VOLUME_UNAVAILABLE": "execuções recusadas: um disco está ausente ou só para leitura",
        "LEDGER_DAMAGED": "execuções recusadas: o ledger do backup está danificado",
        "HOROS_DB_SHRANK": "execuções recusadas: o banco do Horos encolheu ou foi trocado (HOROS_DB_SHRANK)",
        "DISK_FULL": "o disco de backup está cheio (DISK_FULL)",
        "DISK_LOW": "o disco de backup está com pouco espaço livre (DISK_LOW)",
        "INTERNAL_ERROR": "as execuções falham com um erro inesperado",
        "RUN_FAILED": "as execuções falham",
        "STALLED": "o backup está parado",
        "NO_PROGRESS": "nenhum estudo exportado em 24 horas, com estudos esperando",
        "ZIP_FAIL": "estudos não puderam ser compactados (ZIP_FAIL)",
        "INDEX_SNAPSHOT_SKIPPED": "um dia sem cópia consistente do índice do Horos (INDEX_SNAPSHOT_SKIPPED)",
        "VERIFY_BAD": "o verify encontrou ZIPs ruins ou ausentes",
        "SUMMARY_daily": "resumo diário",
        "SUMMARY_weekly": "resumo semanal",
        "TEST": "mensagem de teste",
    },
}

WORDS: Dict[str, Dict[str, str]] = {
    "en": {
        "problem": "{title}",
        "reminder": "still: {title}",
        "recovered": "recovered: {title}",
        "since": "Since: {since}",
        "lasted": "It lasted {duration}.",
        "fix": "What to do: {fix}",
        "archive": "Archive: {done} of {eligible} studies backed up, {pending} pending, {failed} failing, "
                   "{bytes} of images; {free} free on the backup disk; ETA {eta}.",
        "zip_fail": "{count} studies could not be zipped in this run (Study UIDs below); they are retried "
                    "later. Check the backup disk: horos-backup doctor, horos-backup verify --deep.",
        "verify_bad": "verify found {count} bad or missing ZIPs; they are moved to .quarantine/ and queued for "
                      "re-export by the next run.",
        "summary": "Archive: {done} of {eligible} studies backed up, {pending} pending, {failed} failing, "
                   "{bytes} of images; {free} free on the backup disk; ETA {eta}. Health: {health}.",
        "test": "If you read this, alerts from horos-backup on {host} reach you through this channel.",
        "unknown": "unknown",
    },
    "pt": {
        "problem": "{title}",
        "reminder": "continua: {title}",
        "recovered": "resolvido: {title}",
        "since": "Desde: {since}",
        "lasted": "Durou {duration}.",
        "fix": "O que fazer: {fix}",
        "archive": "Acervo: {done} de {eligible} estudos com backup, {pending} pendentes, {failed} com falha, "
                   "{bytes} de imagens; {free} livres no disco de backup; previsão de término {eta}.",
        "zip_fail": "{count} estudos não puderam ser compactados nesta execução (Study UIDs abaixo); serão "
                    "tentados de novo. Confira o disco de backup: horos-backup doctor, horos-backup verify --deep.",
        "verify_bad": "o verify encontrou {count} ZIPs ruins ou ausentes; eles vão para .quarantine/ e a próxima "
                      "execução os exporta de novo.",
        "summary": "Acervo: {done} de {eligible} estudos com backup, {pending} pendentes, {failed} com falha, "
                   "{bytes} de imagens; {free} livres no disco de backup; previsão de término {eta}. "
                   "Saúde: {health}.",
        "test": "Se você está lendo isto, os alertas do horos-backup em {host} chegam por este canal.",
        "unknown": "desconhecido",
    },
}


def title(language: str, code: str) -> str:
    """The one-line title of an event or condition (the code itself when unknown)."""
    return TITLES.get(language, TITLES["en"]).get(code) or TITLES["en"].get(code) or code


def word(language: str, key: str, **values: object) -> str:
    """One sentence of an alert, filled in."""
    return WORDS.get(language, WORDS["en"])[key].format(**values)
