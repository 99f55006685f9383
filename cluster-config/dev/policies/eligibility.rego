# EXAMPLE POLICY FOR DEV MODE ONLY.
# `jitsudod --dev` installs it into its own, marked database so that a first run has
# something to try. It is not a baseline for production: write your own (docs/policy.md).
#
# Dev users: alice (engineering), bob and dave (approvers, engineering),
# carol (jitsudo-admins). Nobody is in `oncall` by default.

package jitsudo.eligibility

max_request_seconds := 4 * 3600

# Members of `engineering` may request any role of the `demo` provider.
allow if {
	input.request.provider == "demo"
	"engineering" in input.requester.groups
}

# On-call engineers may use break-glass on `demo` even outside `engineering`
# (whether break-glass is permitted at all is `jitsudo.approval.break_glass_allowed`).
allow if {
	input.request.provider == "demo"
	input.request.break_glass
	"oncall" in input.requester.groups
}

deny contains msg if {
	input.request.duration_seconds > max_request_seconds
	msg := sprintf("requests are limited to 4h (%d seconds) in this example policy", [max_request_seconds])
}
