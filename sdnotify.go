package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
)

// notifySystemd sends state ("READY=1", "STOPPING=1", …) to the service
// manager, as sd_notify(3) does, when pgpilot runs as a Type=notify systemd
// unit (deploy/systemd/pgpilot.service): one datagram on the unix socket
// $NOTIFY_SOCKET names (a leading "@" is Linux's abstract namespace, which
// the net package maps). Without $NOTIFY_SOCKET it does nothing.
func notifySystemd(state string) error {
	socket := os.Getenv("NOTIFY_SOCKET")
	if socket == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify systemd (NOTIFY_SOCKET=%s): %w", socket, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd (NOTIFY_SOCKET=%s): %w", socket, err)
	}
	return nil
}

// notifyStartAndStop tells systemd that `pgpilot run` has started (its
// configuration loaded: a bad one fails `systemctl start` with exit 2
// rather than after it), and, once ctx is done (SIGTERM), that it is
// stopping while it delivers what it holds. Readiness to stream is
// /readyz's business, not systemd's: an initial sync can take hours, and
// an HA standby waits indefinitely. Call the returned func when run ends.
func notifyStartAndStop(ctx context.Context, log *slog.Logger) (done func()) {
	if err := notifySystemd("READY=1\nSTATUS=running; see /readyz or pgpilot status for what it is doing"); err != nil {
		log.Warn("cannot tell systemd pgpilot has started", "error", err)
	}
	finished := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(finished)
		if err := notifySystemd("STOPPING=1\nSTATUS=stopping: delivering what it holds, then checkpointing"); err != nil {
			log.Warn("cannot tell systemd pgpilot is stopping", "error", err)
		}
	})
	return func() {
		if !stop() {
			<-finished // the STOPPING=1 goroutine was started: wait for it
		}
	}
}
