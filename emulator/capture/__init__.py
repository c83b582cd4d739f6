"""Packet captures of sync sessions, for Wireshark (docs/WIRESHARK.md).

``pcapng`` writes the file format; ``tcp`` turns connections into synthetic TCP/IP streams and
events into event packets; ``sim`` records a simulated run (``sidekick replay --pcap``);
``streams`` records real connections (``device sync --pcap``, ``certify --pcap``, ``serve --pcap``).
"""
