"""Stand-alone commands: send a folder of DICOM files, analyse a folder without the node."""
