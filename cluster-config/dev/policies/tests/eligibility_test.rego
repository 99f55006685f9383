# Unit tests of the example eligibility policy: `jitsudo policy test cluster-config/dev/policies`
# (run by the CLI's tests). Write yours the same way next to your policies.
package jitsudo.eligibility_test

import data.jitsudo.eligibility

alice := {"subject": "alice", "groups": ["engineering"]}

test_engineering_may_request_demo if {
	eligibility.allow with input as {
		"requester": alice,
		"request": {"provider": "demo", "role": "viewer", "duration_seconds": 3600},
	}
}

test_other_providers_are_not_allowed if {
	not eligibility.allow with input as {
		"requester": alice,
		"request": {"provider": "aws", "role": "viewer", "duration_seconds": 3600},
	}
}

test_more_than_four_hours_is_denied_with_a_reason if {
	reasons := eligibility.deny with input as {
		"requester": alice,
		"request": {"provider": "demo", "role": "viewer", "duration_seconds": 5 * 3600},
	}
	count(reasons) == 1
}
