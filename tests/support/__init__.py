"""What tests share: running the proxy as a process, the error envelope, ports, waiting and
clocks. One home for each, so a test reads like its scenario."""
