# EXAMPLE POLICY FOR DEV MODE ONLY.
# `jitsudod --dev` installs it into its own, marked database so that a first run has
# something to try. It is not a baseline for production: write your own (docs/policy.md).
#
# - `demo` role `viewer` for at most 1h is approved automatically;
# - anything else needs 1 approval from group `approvers`, 2 for roles containing "admin";
# - roles containing "admin" need a reason and a ticket such as `OPS-123`, for at most 2h;
# - break-glass only for members of `oncall`.

package jitsudo.approval

admin_role if contains(input.request.role, "admin")

auto_approve if {
	input.request.provider == "demo"
	input.request.role == "viewer"
	input.request.duration_seconds <= 3600
	not input.request.break_glass
}

approver_groups := {"approvers"}

default approvals_required := 1

approvals_required := 2 if admin_role

# Self-approval and counting one person twice are refused by jitsudo itself; this rule
# only says who may approve at all.
approver_allowed if {
	some group in input.approver.groups
	group in approver_groups
}

approval_timeout_seconds := 30 * 60

default max_duration_seconds := 14400 # 4h

max_duration_seconds := 2 * 3600 if admin_role

max_total_duration_seconds := 8 * 3600

# Viewers may extend without a new approval; everyone else asks again.
default extend_requires_approval := true

extend_requires_approval := false if input.request.role == "viewer"

break_glass_allowed if "oncall" in input.requester.groups

reason_required if admin_role

ticket_pattern := `^[A-Z]+-[0-9]+$` if admin_role
