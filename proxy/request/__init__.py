"""The request side: admission (targets, routing, policy), pacing, and the pipeline that
sequences a proxied request."""
