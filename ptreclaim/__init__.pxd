# cimport ptreclaim: the C-level contract, re-exported.
from ptreclaim._core cimport MM, Machine
