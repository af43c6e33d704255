"""The daily ``backup`` job and schedule: ``ibf backup create`` into ``IBF_BACKUP_DIR``, keeping the newest
``IBF_BACKUP_RETENTION`` backups (ibf_core.storage.backup)."""


import dagster as dg

from ibf_core.storage.backup import create, prune, timestamped_folder
from ibf_dagster.resources import SettingsResource

BACKUP_JOB = "backup"


class BackupDirMissing(RuntimeError):
    """The backup job ran without ``IBF_BACKUP_DIR``."""


@dg.op(name="backup_ibf_home", description="Back up IBF_HOME into IBF_BACKUP_DIR, then delete the oldest backups beyond IBF_BACKUP_RETENTION.")
def backup_ibf_home(context: dg.OpExecutionContext, ibf: SettingsResource) -> None:
    settings = ibf.get()
    if settings.backup_dir is None:
        raise BackupDirMissing("IBF_BACKUP_DIR is not set: set it to the folder that keeps the backups")
    result = create(settings, timestamped_folder(settings.backup_dir))
    removed = prune(settings.backup_dir, settings.backup_retention)
    context.log.info(f"backup {result.folder}: {result.files} files, {result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s; "
                     f"removed {len(removed)} older backup(s)")
    context.add_output_metadata({"folder": str(result.folder), "files": result.files, "bytes": result.bytes,
                                 "seconds": round(result.seconds, 2), "removed": [str(p) for p in removed]})


def build_backup() -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """The job and its daily schedule, stopped by default (turn it on where IBF_BACKUP_DIR is set)."""

    @dg.job(name=BACKUP_JOB, description="Back up IBF_HOME (warehouse, MLflow, Dagster instance) into IBF_BACKUP_DIR.",
            tags={"ibf/kind": "backup"})
    def backup() -> None:
        backup_ibf_home()

    schedule = dg.ScheduleDefinition(
        name="backup_schedule",
        job=backup,
        cron_schedule="30 2 * * *",
        execution_timezone="UTC",
        description="Daily at 02:30 UTC: back up IBF_HOME into IBF_BACKUP_DIR (keeps IBF_BACKUP_RETENTION backups).",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    return backup, schedule
