"""Audit an anonymized release: re-identification, detection, missed faces, metadata leaks, quality."""

from anonymize.audit.audit import run_audit
from anonymize.audit.config import AuditConfig, AuditProgress, AuditResult
from anonymize.audit.pairing import AuditError
from anonymize.audit.results import default_audit_dir
from anonymize.audit.summary import AuditSummary, Thresholds

__all__ = ["AuditConfig", "AuditError", "AuditProgress", "AuditResult", "AuditSummary", "Thresholds", "default_audit_dir",
           "run_audit"]
