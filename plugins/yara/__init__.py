"""YARA rules for telfhash clusters (``telfhash yara``; the STIX export's ``pattern_type: yara``
Indicators).  See docs/stix.md, "YARA"."""

from .rules import RuleMember, cluster_rule, rule_name, ruleset

__all__ = ["RuleMember", "cluster_rule", "rule_name", "ruleset"]
