"""The upstream side: a route's plan, one attempt (exchange), the retry layers around it, the
relay back down, and the pieces they share (headers, bodies, slots, TLS, the session)."""
