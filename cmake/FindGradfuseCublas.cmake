# Finds cuBLAS for the CUDA backend: the toolkit's own copy when it has one, else the PyPI
# wheel `nvidia-cublas` (headers in site-packages/nvidia/cu13/include, or nvidia/cublas/include
# for CUDA 12 wheels) located by asking Python where the `nvidia` namespace package lives.
# Sets GRADFUSE_CUBLAS_INCLUDE_DIR, GRADFUSE_CUBLAS_LIBRARY and GRADFUSE_CUBLAS_LIBRARY_DIR.
# Override with -DGRADFUSE_CUBLAS_ROOT=<dir holding include/ and lib/> or the environment
# variable of the same name.

set(_gf_cublas_hints)
if(DEFINED GRADFUSE_CUBLAS_ROOT)
  list(APPEND _gf_cublas_hints ${GRADFUSE_CUBLAS_ROOT})
endif()
if(DEFINED ENV{GRADFUSE_CUBLAS_ROOT})
  list(APPEND _gf_cublas_hints $ENV{GRADFUSE_CUBLAS_ROOT})
endif()

# The interpreter building the wheel, then the `python3` on PATH (with pip's build isolation
# the former does not see the user's environment, the latter usually does).
set(_gf_pythons ${Python_EXECUTABLE})
find_program(_gf_path_python NAMES python3 python)
if(_gf_path_python)
  list(APPEND _gf_pythons ${_gf_path_python})
endif()
set(_gf_probe [=[
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations if spec else []):
    for sub in ("cu13", "cublas", "cu12"):
        d = os.path.join(root, sub)
        if os.path.isfile(os.path.join(d, "include", "cublas_v2.h")):
            print(d)
]=])
foreach(_py IN LISTS _gf_pythons)
  execute_process(COMMAND ${_py} -c "${_gf_probe}" OUTPUT_VARIABLE _gf_out
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _gf_rc)
  if(_gf_rc EQUAL 0 AND _gf_out)
    string(REPLACE "\n" ";" _gf_out "${_gf_out}")
    list(APPEND _gf_cublas_hints ${_gf_out})
  endif()
endforeach()
list(APPEND _gf_cublas_hints ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})

find_path(GRADFUSE_CUBLAS_INCLUDE_DIR cublas_v2.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} ${_gf_cublas_hints} PATH_SUFFIXES include)
# the wheels ship only the versioned soname (libcublas.so.13), no libcublas.so link
find_library(GRADFUSE_CUBLAS_LIBRARY NAMES cublas libcublas.so.13 libcublas.so.12
             HINTS ${CUDAToolkit_LIBRARY_DIR} ${_gf_cublas_hints} PATH_SUFFIXES lib lib64)
if(NOT GRADFUSE_CUBLAS_INCLUDE_DIR OR NOT GRADFUSE_CUBLAS_LIBRARY)
  message(FATAL_ERROR
    "GRADFUSE_CUDA=ON needs cuBLAS: the CUDA toolkit has none and no `nvidia-cublas` wheel was "
    "found (pip install nvidia-cublas into the Python that builds gradfuse, or set "
    "GRADFUSE_CUBLAS_ROOT). Looked in: ${_gf_cublas_hints}")
endif()
get_filename_component(GRADFUSE_CUBLAS_LIBRARY_DIR ${GRADFUSE_CUBLAS_LIBRARY} DIRECTORY)
message(STATUS "gradfuse: cuBLAS ${GRADFUSE_CUBLAS_LIBRARY} (headers ${GRADFUSE_CUBLAS_INCLUDE_DIR})")
