package cli

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// The printed shape of each resource: the API's fields in JSON and YAML,
// and these columns in tables (-o wide adds the wide ones).

var tokenOut = resource[admin.TokenView]{
	columns: []column[admin.TokenView]{
		{header: "ID", value: func(_ *outputFlags, t admin.TokenView) string { return t.ID }},
		{header: "SUBJECT", value: func(_ *outputFlags, t admin.TokenView) string { return t.Subject }},
		{header: "CLASS", value: func(_ *outputFlags, t admin.TokenView) string { return t.Class }},
		{header: "TENANT", value: func(_ *outputFlags, t admin.TokenView) string { return t.Tenant }},
		{header: "STATE", value: func(_ *outputFlags, t admin.TokenView) string { return t.State }},
		{header: "EXPIRES", value: func(o *outputFlags, t admin.TokenView) string { return o.when(t.ExpiresAt) }},
		{header: "SCOPES", value: func(_ *outputFlags, t admin.TokenView) string { return strings.Join(t.Scopes, ",") }},
		{header: "ISSUED", wide: true, value: func(o *outputFlags, t admin.TokenView) string { return o.when(t.IssuedAt) }},
		{header: "ENV", wide: true, value: func(_ *outputFlags, t admin.TokenView) string { return t.Env }},
		{header: "KID", wide: true, value: func(_ *outputFlags, t admin.TokenView) string { return t.KeyID }},
		{header: "BINDING", wide: true, value: func(_ *outputFlags, t admin.TokenView) string {
			switch {
			case t.Workload != "":
				return "workload:" + t.Workload
			case t.JKT != "":
				return "dpop:" + t.JKT
			}
			return ""
		}},
		{header: "ROTATED", wide: true, value: func(_ *outputFlags, t admin.TokenView) string { return t.Rotated }},
		{header: "SUCCESSOR", wide: true, value: func(_ *outputFlags, t admin.TokenView) string { return t.Successor }},
		{header: "ACTOR", wide: true, value: func(_ *outputFlags, t admin.TokenView) string { return t.Actor }},
	},
	zoned: func(o *outputFlags, t admin.TokenView) admin.TokenView {
		t.IssuedAt, t.ExpiresAt = o.in(t.IssuedAt), o.in(t.ExpiresAt)
		return t
	},
}

// issued is a new token as `token issue -o json|yaml` prints it: the API's
// answer.
var issuedOut = resource[admin.IssueResponse]{
	zoned: func(o *outputFlags, t admin.IssueResponse) admin.IssueResponse {
		t.TokenView = tokenOut.zoned(o, t.TokenView)
		return t
	},
}

var keyOut = resource[store.Key]{
	columns: []column[store.Key]{
		{header: "KID", value: func(_ *outputFlags, k store.Key) string { return k.ID }},
		{header: "STATE", value: func(_ *outputFlags, k store.Key) string { return string(k.State) }},
		{header: "CREATED", value: func(o *outputFlags, k store.Key) string { return o.when(k.CreatedAt) }},
		{header: "SIGNS FROM", value: func(o *outputFlags, k store.Key) string { return o.when(k.SignsFrom()) }},
		{header: "RETIRED", wide: true, value: func(o *outputFlags, k store.Key) string { return o.when(k.RetiredAt) }},
		{header: "PUBLIC KEY", wide: true, value: func(_ *outputFlags, k store.Key) string {
			return base64.RawURLEncoding.EncodeToString(k.Public)
		}},
	},
	zoned: func(o *outputFlags, k store.Key) store.Key {
		k.Sealed = nil
		k.CreatedAt, k.RetiredAt, k.ActivateAt = o.in(k.CreatedAt), o.in(k.RetiredAt), o.in(k.ActivateAt)
		return k
	},
}

var revocationOut = resource[policy.Revocation]{
	columns: []column[policy.Revocation]{
		{header: "ID", value: func(_ *outputFlags, r policy.Revocation) string { return r.ID }},
		{header: "KIND", value: func(_ *outputFlags, r policy.Revocation) string { return string(r.Kind) }},
		{header: "TARGET", value: func(_ *outputFlags, r policy.Revocation) string { return r.Target }},
		{header: "EFFECTIVE", value: func(o *outputFlags, r policy.Revocation) string { return o.when(r.EffectiveAt) }},
		{header: "REASON", value: func(_ *outputFlags, r policy.Revocation) string { return r.Reason }},
		{header: "ISSUED BEFORE", wide: true, value: func(o *outputFlags, r policy.Revocation) string { return o.when(r.IssuedBefore) }},
		{header: "EXPIRES", wide: true, value: func(o *outputFlags, r policy.Revocation) string { return o.when(r.Expires) }},
		{header: "CREATED", wide: true, value: func(o *outputFlags, r policy.Revocation) string { return o.when(r.CreatedAt) }},
		{header: "ACTOR", wide: true, value: func(_ *outputFlags, r policy.Revocation) string { return r.Actor }},
	},
	zoned: func(o *outputFlags, r policy.Revocation) policy.Revocation {
		r.EffectiveAt, r.IssuedBefore, r.Expires, r.CreatedAt = o.in(r.EffectiveAt), o.in(r.IssuedBefore), o.in(r.Expires), o.in(r.CreatedAt)
		return r
	},
}

var auditOut = resource[audit.Record]{
	columns: []column[audit.Record]{
		{header: "TIME", value: func(o *outputFlags, r audit.Record) string { return o.when(r.Time) }},
		{header: "SEQ", value: func(_ *outputFlags, r audit.Record) string { return fmt.Sprint(r.Seq) }},
		{header: "ACTION", value: func(_ *outputFlags, r audit.Record) string { return r.Action }},
		{header: "ACTOR", value: func(_ *outputFlags, r audit.Record) string { return r.Actor }},
		{header: "DETAILS", value: func(_ *outputFlags, r audit.Record) string { return recordDetails(r) }},
		{header: "CHAIN KEY", wide: true, value: func(_ *outputFlags, r audit.Record) string { return r.ChainKey }},
		{header: "HASH", wide: true, value: func(_ *outputFlags, r audit.Record) string { return r.Hash }},
	},
	zoned: func(o *outputFlags, r audit.Record) audit.Record {
		r.Time = o.in(r.Time)
		return r
	},
}
