"""Audit an anonymized release: re-identification, detection, missed faces, metadata leaks, quality."""

from anonymize.audit.audit import AuditConfig, AuditProgress, AuditResult, default_audit_dir, run_audit
from anonymize.audit.pairing import AuditError
from anonymize.audit.summary import Thresholds

__all__ = ["AuditConfig", "AuditError", "AuditProgress", "AuditResult", "Thresholds", "default_audit_dir", "run_audit"]
