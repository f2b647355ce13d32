package device

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/colonymq/colony/rpc"
)

// ShadowState holds the two sides of a shadow. Values are any JSON;
// nested objects merge field by field.
type ShadowState struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
	Delta    map[string]any `json:"delta,omitempty"` // desired fields that reported does not match (answers only)
}

// ShadowMetadata mirrors the state with {"timestamp": Unix ms} at every
// leaf: when each field was last set.
type ShadowMetadata struct {
	Desired  map[string]any `json:"desired,omitempty"`
	Reported map[string]any `json:"reported,omitempty"`
}

// shadowRecord is a shadow as stored.
type shadowRecord struct {
	State     ShadowState    `json:"state"`
	Metadata  ShadowMetadata `json:"metadata"`
	Version   int64          `json:"version"`
	Timestamp int64          `json:"timestamp"` // Unix ms of the last update
}

// Shadow is a shadow document as answers show it.
type Shadow struct {
	ID          string         `json:"id,omitempty"`
	Name        string         `json:"name,omitempty"`
	State       ShadowState    `json:"state"`
	Metadata    ShadowMetadata `json:"metadata"`
	Version     int64          `json:"version"`
	Timestamp   int64          `json:"timestamp"`
	ClientToken string         `json:"clientToken,omitempty"`
}

// ShadowUpdate is an update request, on dev/<id>/shadow[/name/<name>]/update
// or through the shadow_update handler. A null field deletes it; a null
// desired or reported deletes that whole side. A non-zero Version must
// equal the current one or the update is rejected (compare-and-set).
type ShadowUpdate struct {
	ID          string         `json:"id,omitempty"`   // handler only
	Name        string         `json:"name,omitempty"` // handler only; "" is the classic shadow
	State       map[string]any `json:"state"`
	Version     int64          `json:"version,omitempty"`
	ClientToken string         `json:"clientToken,omitempty"`
}

// ShadowReq names a shadow.
type ShadowReq struct {
	ID          string `json:"id"`
	Name        string `json:"name,omitempty"`
	ClientToken string `json:"clientToken,omitempty"`
}

// ShadowError is what …/rejected topics carry, AWS-style: 400 bad
// request, 404 no shadow, 409 version conflict, 413 too large, 500.
type ShadowError struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	ClientToken string `json:"clientToken,omitempty"`
	Timestamp   int64  `json:"timestamp"`
}

// ShadowNames lists a device's shadows ("" is the classic one).
type ShadowNames struct {
	Names []string `json:"names"`
}

// shadowTopic is the topic prefix of a device's shadow.
func shadowTopic(id, name string) string {
	if name == "" {
		return TopicRoot + id + "/shadow"
	}
	return TopicRoot + id + "/shadow/name/" + name
}

// shadowMessage handles a device or app publishing to a shadow topic;
// rest is what follows dev/<id>/shadow/.
func (m *Module) shadowMessage(ctx context.Context, id, rest string, payload []byte) {
	name := ""
	if after, ok := strings.CutPrefix(rest, "name/"); ok {
		n, op, ok := strings.Cut(after, "/")
		if !ok || !validName(n) {
			return
		}
		name, rest = n, op
	}
	base := shadowTopic(id, name)
	token := struct{ ClientToken string }{clientToken(payload)}
	reject := func(op string, err error) {
		m.publishJSON(base+"/"+op+"/rejected", shadowErr(err, token.ClientToken))
	}
	switch rest {
	case "update":
		if len(payload) > m.opts.MaxShadowBytes {
			reject(rest, rpc.Errorf(rpc.CodeBadRequest, "update of %d bytes, at most %d: %w", len(payload), m.opts.MaxShadowBytes, ErrTooLarge))
			return
		}
		var u ShadowUpdate
		if err := json.Unmarshal(payload, &u); err != nil {
			reject(rest, rpc.Errorf(rpc.CodeBadRequest, "update is not JSON: %v: %w", err, ErrInvalid))
			return
		}
		u.ID, u.Name = id, name
		if _, err := m.updateShadow(ctx, &u, len(payload)); err != nil {
			reject(rest, err)
		}
	case "get":
		doc, err := m.getShadow(id, name)
		if err != nil {
			reject(rest, err)
			return
		}
		doc.ClientToken = token.ClientToken
		m.publishJSON(base+"/get/accepted", doc)
	case "delete":
		if err := m.deleteShadow(ctx, id, name, token.ClientToken); err != nil {
			reject(rest, err)
		}
	}
}

func shadowErr(err error, clientToken string) ShadowError {
	code := 500
	switch {
	case errors.Is(err, ErrVersionConflict):
		code = 409
	case errors.Is(err, ErrTooLarge):
		code = 413
	case errors.Is(err, ErrNotFound):
		code = 404
	case rpc.CodeOf(err) == rpc.CodeBadRequest:
		code = 400
	}
	return ShadowError{Code: code, Message: rpc.AsError(err).Message, ClientToken: clientToken, Timestamp: now()}
}

func (m *Module) publishJSON(topic string, v any) {
	b, err := json.Marshal(v)
	if err == nil {
		err = m.host.Server.Publish(topic, b, false, 1)
	}
	if err != nil {
		m.log.Warn().Err(err).Str("topic", topic).Msg("publish")
	}
}

// updateShadow applies u; size is its payload's size (0 from handlers,
// which measure it here).
func (m *Module) updateShadow(ctx context.Context, u *ShadowUpdate, size int) (*Shadow, error) {
	if u.Name != "" {
		if err := checkName("shadow name", u.Name); err != nil {
			return nil, err
		}
	}
	if size == 0 {
		b, err := json.Marshal(u)
		if err != nil {
			return nil, rpc.Errorf(rpc.CodeBadRequest, "update: %v: %w", err, ErrInvalid)
		}
		size = len(b)
	}
	if size > m.opts.MaxShadowBytes {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "update of %d bytes, at most %d: %w", size, m.opts.MaxShadowBytes, ErrTooLarge)
	}
	desired, hasDesired := u.State["desired"]
	reported, hasReported := u.State["reported"]
	if len(u.State) == 0 || len(u.State) > 2 || (len(u.State) == 2 && !(hasDesired && hasReported)) || (!hasDesired && !hasReported) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "state must hold desired and/or reported: %w", ErrInvalid)
	}
	dm, dok := desired.(map[string]any)
	rm, rok := reported.(map[string]any)
	if (hasDesired && desired != nil && !dok) || (hasReported && reported != nil && !rok) {
		return nil, rpc.Errorf(rpc.CodeBadRequest, "desired and reported must be objects or null: %w", ErrInvalid)
	}
	t := now()
	var prev, next shadowRecord
	err := m.st.shadows.Update(ctx, u.ID+sep+u.Name, func(cur shadowRecord, _ bool) (shadowRecord, bool, error) {
		if u.Version != 0 && u.Version != cur.Version {
			return cur, false, rpc.Errorf(rpc.CodeBadRequest, "shadow is at version %d, update names %d: %w", cur.Version, u.Version, ErrVersionConflict)
		}
		prev = cur
		n := shadowRecord{State: ShadowState{Desired: cloneMap(cur.State.Desired), Reported: cloneMap(cur.State.Reported)},
			Metadata: ShadowMetadata{Desired: cloneMap(cur.Metadata.Desired), Reported: cloneMap(cur.Metadata.Reported)},
			Version:  cur.Version + 1, Timestamp: t}
		if hasDesired {
			n.State.Desired, n.Metadata.Desired = apply(n.State.Desired, n.Metadata.Desired, dm, desired == nil, t)
		}
		if hasReported {
			n.State.Reported, n.Metadata.Reported = apply(n.State.Reported, n.Metadata.Reported, rm, reported == nil, t)
		}
		b, err := json.Marshal(n.State)
		if err != nil {
			return cur, false, rpc.Errorf(rpc.CodeBadRequest, "shadow state: %v: %w", err, ErrInvalid)
		}
		if len(b) > m.opts.MaxShadowBytes {
			return cur, false, rpc.Errorf(rpc.CodeBadRequest, "shadow would be %d bytes, at most %d: %w", len(b), m.opts.MaxShadowBytes, ErrTooLarge)
		}
		next = n
		return n, false, nil
	})
	if err != nil {
		return nil, err
	}
	m.stats.shadowUpdates.Add(1)
	base := shadowTopic(u.ID, u.Name)
	accepted := &Shadow{State: ShadowState{}, Version: next.Version, Timestamp: t, ClientToken: u.ClientToken}
	if hasDesired {
		accepted.State.Desired, accepted.Metadata.Desired = dm, stamps(dm, t)
	}
	if hasReported {
		accepted.State.Reported, accepted.Metadata.Reported = rm, stamps(rm, t)
	}
	m.publishJSON(base+"/update/accepted", accepted)
	if hasDesired {
		if d := delta(next.State.Desired, next.State.Reported); len(d) > 0 {
			m.publishJSON(base+"/update/delta", map[string]any{"state": d, "version": next.Version, "timestamp": t,
				"metadata": pickMeta(next.Metadata.Desired, d), "clientToken": u.ClientToken})
		}
	}
	m.publishJSON(base+"/update/documents", map[string]any{"previous": view(u.ID, u.Name, prev), "current": view(u.ID, u.Name, next),
		"timestamp": t, "clientToken": u.ClientToken})
	return accepted, nil
}

func view(id, name string, r shadowRecord) *Shadow {
	return &Shadow{ID: id, Name: name, State: ShadowState{Desired: r.State.Desired, Reported: r.State.Reported,
		Delta: delta(r.State.Desired, r.State.Reported)}, Metadata: r.Metadata, Version: r.Version, Timestamp: r.Timestamp}
}

func (m *Module) getShadow(id, name string) (*Shadow, error) {
	r, ok, err := m.st.shadows.Get(id + sep + name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, rpc.Errorf(rpc.CodeNotFound, "no shadow %q for device %s: %w", name, id, ErrNotFound)
	}
	return view(id, name, r), nil
}

func (m *Module) deleteShadow(ctx context.Context, id, name, clientToken string) error {
	r, err := m.getShadow(id, name)
	if err != nil {
		return err
	}
	if err := m.st.shadows.Delete(ctx, id+sep+name); err != nil {
		return err
	}
	m.publishJSON(shadowTopic(id, name)+"/delete/accepted", map[string]any{"version": r.Version, "timestamp": now(), "clientToken": clientToken})
	return nil
}

// apply merges patch into state (null deletes) and stamps metadata; del
// deletes the whole side.
func apply(state, meta, patch map[string]any, del bool, t int64) (map[string]any, map[string]any) {
	if del {
		return nil, nil
	}
	if state == nil {
		state = map[string]any{}
	}
	if meta == nil {
		meta = map[string]any{}
	}
	for k, v := range patch {
		switch x := v.(type) {
		case nil:
			delete(state, k)
			delete(meta, k)
		case map[string]any:
			sub, _ := state[k].(map[string]any)
			subMeta, _ := meta[k].(map[string]any)
			if _, leaf := subMeta["timestamp"]; leaf {
				subMeta = nil
			}
			ns, nm := apply(cloneMap(sub), cloneMap(subMeta), x, false, t)
			if len(ns) == 0 {
				delete(state, k)
				delete(meta, k)
			} else {
				state[k], meta[k] = ns, nm
			}
		default:
			state[k] = v
			meta[k] = map[string]any{"timestamp": t}
		}
	}
	if len(state) == 0 {
		return nil, nil
	}
	return state, meta
}

// stamps returns metadata for every leaf of patch.
func stamps(patch map[string]any, t int64) map[string]any {
	if patch == nil {
		return nil
	}
	out := map[string]any{}
	for k, v := range patch {
		if sub, ok := v.(map[string]any); ok {
			out[k] = stamps(sub, t)
		} else {
			out[k] = map[string]any{"timestamp": t}
		}
	}
	return out
}

// delta returns the desired fields reported does not match.
func delta(desired, reported map[string]any) map[string]any {
	var out map[string]any
	for k, d := range desired {
		r, ok := reported[k]
		dm, dIsMap := d.(map[string]any)
		rm, rIsMap := r.(map[string]any)
		var diff any
		switch {
		case dIsMap && rIsMap:
			if sub := delta(dm, rm); len(sub) > 0 {
				diff = sub
			}
		case !ok || !equalJSON(d, r):
			diff = d
		}
		if diff != nil {
			if out == nil {
				out = map[string]any{}
			}
			out[k] = diff
		}
	}
	return out
}

func equalJSON(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	ab, err1 := json.Marshal(a)
	bb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ab) == string(bb)
}

func pickMeta(meta, d map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range d {
		if sub, ok := v.(map[string]any); ok {
			if sm, ok := meta[k].(map[string]any); ok {
				out[k] = pickMeta(sm, sub)
			}
			continue
		}
		out[k] = meta[k]
	}
	return out
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			v = cloneMap(sub)
		}
		out[k] = v
	}
	return out
}

// Handlers for applications.

func (m *Module) shadowGet(ctx context.Context, req *ShadowReq) (*Shadow, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if _, ok := m.device(req.ID); !ok {
		return nil, notFound("device", req.ID)
	}
	return m.getShadow(req.ID, req.Name)
}

func (m *Module) shadowUpdate(ctx context.Context, req *ShadowUpdate) (*Shadow, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if _, ok := m.device(req.ID); !ok {
		return nil, notFound("device", req.ID)
	}
	s, err := m.updateShadow(ctx, req, 0)
	if err != nil {
		base := shadowTopic(req.ID, req.Name)
		m.publishJSON(base+"/update/rejected", shadowErr(err, req.ClientToken))
	}
	return s, err
}

func (m *Module) shadowDelete(ctx context.Context, req *ShadowReq) (*struct{}, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if err := m.deleteShadow(ctx, req.ID, req.Name, req.ClientToken); err != nil {
		return nil, err
	}
	return &struct{}{}, nil
}

func (m *Module) shadowList(ctx context.Context, req *IDReq) (*ShadowNames, error) {
	if err := m.admin(ctx); err != nil {
		return nil, err
	}
	if _, ok := m.device(req.ID); !ok {
		return nil, notFound("device", req.ID)
	}
	out := &ShadowNames{Names: []string{}}
	err := m.st.shadows.Scan(req.ID+sep, func(k string, _ shadowRecord) bool {
		out.Names = append(out.Names, k[len(req.ID)+1:])
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list shadows of %s: %w", req.ID, err)
	}
	return out, nil
}

// clientToken returns the clientToken of a JSON payload, "" if it has
// none or is not JSON (which the operation itself then reports).
func clientToken(payload []byte) string {
	var v struct {
		ClientToken string `json:"clientToken"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	return v.ClientToken
}
