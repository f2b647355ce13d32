package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/colonymq/colony/rpc"
)

// register registers every handler of the module; README.md documents
// each with its request and result.
func (m *Module) register(reg *rpc.Registry, id string) {
	// Registry and credentials.
	rpc.Handle(reg, id, "create", m.create)
	rpc.Handle(reg, id, "get", m.get)
	rpc.Handle(reg, id, "list", m.list)
	rpc.Handle(reg, id, "update", m.update)
	rpc.Handle(reg, id, "disable", m.setDisabled(true))
	rpc.Handle(reg, id, "enable", m.setDisabled(false))
	rpc.Handle(reg, id, "delete", m.remove)
	rpc.Handle(reg, id, "token", m.rotate)
	rpc.Handle(reg, id, "psk", m.newPSK)
	rpc.Handle(reg, id, "summary", m.summary)
	// Provisioning by claim.
	rpc.Handle(reg, id, "claim_create", m.claimCreate)
	rpc.Handle(reg, id, "claim_list", m.claimList)
	rpc.Handle(reg, id, "claim_delete", m.claimDelete)
	rpc.Handle(reg, id, "provision", m.provision)
	// Telemetry.
	rpc.Handle(reg, id, "telemetry", m.query)
	rpc.Handle(reg, id, "latest", m.latest)
	// Shadows.
	rpc.Handle(reg, id, "shadow_get", m.shadowGet)
	rpc.Handle(reg, id, "shadow_update", m.shadowUpdate)
	rpc.Handle(reg, id, "shadow_delete", m.shadowDelete)
	rpc.Handle(reg, id, "shadow_list", m.shadowList)
	// Commands.
	rpc.Handle(reg, id, "invoke", m.invoke)
	rpc.Handle(reg, id, "command_get", m.commandGet)
	// Jobs.
	rpc.Handle(reg, id, "job_create", m.jobCreate)
	rpc.Handle(reg, id, "job_get", m.jobGet)
	rpc.Handle(reg, id, "job_list", m.jobList)
	rpc.Handle(reg, id, "job_cancel", m.jobCancel)
}

// commandRetention is how long finished commands stay readable with command_get.
const commandRetention = 7 * 24 * time.Hour

// Sweep runs retention once: old telemetry, queued commands past their
// TTL, and finished commands older than a week. The module runs it every
// Options.SweepInterval.
func (m *Module) Sweep(ctx context.Context) error {
	var errs []error
	if err := m.sweepTelemetry(ctx); err != nil {
		errs = append(errs, fmt.Errorf("telemetry retention: %w", err))
	}
	if err := m.cmds.expire(ctx); err != nil {
		errs = append(errs, fmt.Errorf("expire queued commands: %w", err))
	}
	cut := now() - commandRetention.Milliseconds()
	var old []string
	if err := m.st.cmds.Scan("", func(k string, c Command) bool {
		if c.Created < cut && c.Status != CmdQueued {
			old = append(old, k)
		}
		return true
	}); err != nil {
		errs = append(errs, err)
	}
	if len(old) > 0 {
		b := m.st.db.NewBatch()
		for _, k := range old {
			m.st.cmds.DeleteIn(b, k)
		}
		if err := b.Commit(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
