"""Tools built on the test kit: `vhostsplice drive` (drive.py: the pure-Python front-end and driver as a
command, for scripts; one fault from testing/faults.py on request; its frames both ways in traffic.py,
feature names in features.py, pcap files in pcap.py, its exit codes in exits.py) and `vhostsplice demo`
(demo.py: a real worker on a private netns tap, driven both ways, every frame checked).

A layer of docs/architecture.md: it imports the test kit (testing/) and the layers below, never the
command line.
"""
