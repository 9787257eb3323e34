// Package policy holds the rules of tokenwarden: the policy document (load,
// validate, compile), the token format (mint, parse, verify), route matching
// and the pure decision Decide. It does no I/O beyond reading the bytes it is
// handed, so every enforcement point (ext_authz, admin API, CLI, benchmarks)
// decides the same way.
package policy
