"""The rules REST API: ``/api/v1/rules``, backed by a RuleStore (Kubernetes or database)."""

from smarttasks.automation.api.app import (
    ROUTERS,
    RulesApiSettings,
    create_rules_app,
    use_database_store,
)
from smarttasks.automation.api.database_store import DatabaseRuleStore
from smarttasks.automation.api.kubernetes_store import KubernetesRuleStore
from smarttasks.automation.api.store import RuleStore, StoredRule

__all__ = [
    "ROUTERS",
    "DatabaseRuleStore",
    "KubernetesRuleStore",
    "RuleStore",
    "RulesApiSettings",
    "StoredRule",
    "create_rules_app",
    "use_database_store",
]
