package bench

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	snc "github.com/colonymq/colony/server/mqttsn/client"
	"github.com/colonymq/colony/server/mqttsn/packet"
)

// snClient is an MQTT-SN device publishing through a gateway. QoS 1/2
// publishes run Window at a time, each waiting for its acknowledgement.
type snClient struct {
	c       *snc.Client
	qos     packet.QoS
	timeout time.Duration
	errs    *errLog
	window  chan struct{}
	wg      sync.WaitGroup
}

func connectSN(ctx context.Context, cfg *Config, o clientOpts, errs *errLog) (*snClient, error) {
	opts := snc.Options{ClientID: o.id, CleanSession: true, KeepAlive: cfg.KeepAlive, RetryInterval: cfg.Timeout, MaxRetries: 2}
	if cfg.SNPSKIdentity != "" {
		key, err := hex.DecodeString(cfg.SNPSK)
		if err != nil {
			return nil, fmt.Errorf("%w: sn psk is not hex: %w", ErrInvalidConfig, err)
		}
		opts.DTLS = &snc.DTLS{PSKIdentity: cfg.SNPSKIdentity, PSK: key}
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	c, err := snc.Dial(cctx, cfg.SN, opts)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", o.id, err)
	}
	if err := c.Connect(cctx); err != nil {
		if cerr := c.Close(); cerr != nil {
			errs.add(cerr)
		}
		return nil, fmt.Errorf("connect %s: %w", o.id, err)
	}
	return &snClient{c: c, qos: packet.QoS(cfg.QoS), timeout: cfg.Timeout, errs: errs, window: make(chan struct{}, cfg.Window)}, nil
}

func (s *snClient) publish(m message) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout*3)
	if s.qos == 0 {
		defer cancel()
		if err := s.c.Publish(ctx, m.topic, 0, false, m.payload); err != nil {
			s.errs.add(err)
		}
		return nil
	}
	select {
	case s.window <- struct{}{}:
	case <-time.After(s.timeout):
		cancel()
		return errStalled
	}
	tt, id, err := s.c.TopicRef(ctx, m.topic, s.qos)
	if err != nil {
		<-s.window
		cancel()
		s.errs.add(err)
		return nil
	}
	wait := s.c.PublishAsync(tt, id, s.qos, false, m.payload) // sent in order; acknowledged in any
	s.wg.Add(1)
	go func() {
		defer func() { <-s.window; s.wg.Done(); cancel() }()
		if err := wait(ctx); err != nil {
			s.errs.add(err)
		}
	}()
	return nil
}

func (s *snClient) flush() { s.wg.Wait() }

func (s *snClient) subscribe(filter string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	_, _, err := s.c.Subscribe(ctx, filter, s.qos)
	return err
}

func (s *snClient) disconnect() {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := s.c.Disconnect(ctx); err != nil {
		s.errs.add(err)
	}
}
