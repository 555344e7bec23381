"""Media for the peer agent: local sources, the remote-track tap and the frame consumers.

The pieces are small and pluggable: a source is an aiortc ``MediaStreamTrack``; a
``TrackTap`` reads one remote track and hands every frame to ``FrameConsumer``s
(``Recorder``, ``Mosaic``), none of which may block the event loop.
"""
