"""Packet captures of sync sessions, for Wireshark (docs/WIRESHARK.md).

``pcapng`` writes the file format; ``tcp`` turns connections into synthetic TCP/IP streams and
events into event packets; ``streams`` records real connections (``device sync --pcap``,
``certify --pcap``, ``serve --pcap``). A simulated run is recorded by
``emulator.sim.pcap`` (``sidekick replay --pcap``), which builds on these.
"""
