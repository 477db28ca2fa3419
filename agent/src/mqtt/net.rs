//! The network task: owns rumqttc's `EventLoop`, connects with our own backoff and a fresh
//! login each time, and forwards every event to the session task.
//!
//! After every connection loss it hands the session a `Down` and waits for its answer
//! before touching anything: from then on the session submits nothing until the next
//! `Up`. Only then is rumqttc's state thrown away (`clean()` drains the request channel,
//! `pending` is cleared, a fresh `MqttState`), so no publish or PUBACK of the old
//! connection leaks into the new one and every packet id the session sees after `Up`
//! belongs to a request it made after `Up`. Unconfirmed messages are resent from the inbox
//! by the session, whatever `session_present` says.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{ConnectReturnCode, ConnectionError, Event, EventLoop, MqttState, Packet};
use tokio::sync::{mpsc, oneshot, watch};

use super::options::Login;
use crate::uplink::backoff::{seed, Backoff};
use crate::uplink::{AuthError, Secret};

/// A connection that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);

pub(crate) enum NetEvent {
    Up {
        session_present: bool,
        token_expires_at: Option<SystemTime>,
    },
    Event(Event),
    /// The connection is gone. The session answers on `ack` once it has forgotten every
    /// request of that connection.
    Down {
        error: String,
        refused: bool,
        ack: oneshot::Sender<()>,
    },
    /// No credentials could be had (token endpoint); retried after the backoff.
    NoLogin(AuthError),
}

pub(crate) struct Net {
    pub el: EventLoop,
    pub login: Arc<Login>,
    pub tx: mpsc::UnboundedSender<NetEvent>,
    pub stop: watch::Receiver<bool>,
    pub window: u16,
}

impl Net {
    pub async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60), seed());
        let mut need_login = true;
        let mut password: Option<Secret> = None;
        let mut up_since: Option<Instant> = None;
        loop {
            if need_login {
                let l = self.login.clone();
                match tokio::task::spawn_blocking(move || l.credentials()).await {
                    Ok(Ok(Some((user, pass)))) => {
                        self.el.mqtt_options.set_credentials(user, pass.expose());
                        password = Some(pass);
                        need_login = false;
                    }
                    Ok(Ok(None)) => need_login = false,
                    Ok(Err(e)) => {
                        if self.tx.send(NetEvent::NoLogin(e)).is_err() {
                            return;
                        }
                        if !self.wait(backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "login task failed");
                        if !self.wait(backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let r = tokio::select! {
                r = self.el.poll() => r,
                _ = self.stop.wait_for(|s| *s) => return,
            };
            match r {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    up_since = Some(Instant::now());
                    let up = NetEvent::Up {
                        session_present: ack.session_present,
                        token_expires_at: self.login.token_expiry(),
                    };
                    if self.tx.send(up).is_err() {
                        return;
                    }
                }
                Ok(ev) => {
                    if self.tx.send(NetEvent::Event(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if matches!(e, ConnectionError::RequestsDone) {
                        return;
                    }
                    if up_since.take().is_some_and(|t| t.elapsed() >= STABLE) {
                        backoff.reset();
                    }
                    let refused = matches!(
                        e,
                        ConnectionError::ConnectionRefused(
                            ConnectReturnCode::BadUserNamePassword
                                | ConnectReturnCode::NotAuthorized
                        )
                    );
                    if refused {
                        if let Some(p) = &password {
                            self.login.refused(p);
                        }
                    }
                    let (ack, acked) = oneshot::channel();
                    let down = NetEvent::Down {
                        error: e.to_string(),
                        refused,
                        ack,
                    };
                    if self.tx.send(down).is_err() || acked.await.is_err() {
                        return;
                    }
                    // The session has forgotten this connection: drop rumqttc's copies too.
                    self.el.clean();
                    self.el.pending.clear();
                    self.el.state = MqttState::new(self.window, true);
                    if !self.wait(backoff.next_delay()).await {
                        return;
                    }
                    need_login = true;
                }
            }
        }
    }

    /// Waits `d` unless stopped; `false`: stop.
    async fn wait(&mut self, d: Duration) -> bool {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.stop.wait_for(|s| *s) => true,
        };
        !stopped && !*self.stop.borrow()
    }
}
