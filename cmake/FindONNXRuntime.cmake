# FindONNXRuntime: ONNX Runtime C/C++ API headers and library.
#
# Where it looks, first match wins:
#   headers: EXITC_ORT_INCLUDE_DIR, <EXITC_ORT_ROOT>/include[/onnxruntime],
#            runtime/.deps/onnxruntime/include (scripts/setup_runtime.sh), system include dirs
#            (Debian 13 libonnxruntime-dev: /usr/include/onnxruntime)
#   library: EXITC_ORT_LIBRARY, <EXITC_ORT_ROOT>/lib, the system library paths, then the
#            onnxruntime Python wheel of EXITC_PYTHON / Python_EXECUTABLE / python3
#            (onnxruntime/capi/libonnxruntime.so.1.*: a newer C API than the headers, which is fine
#            because ORT's C API is backwards compatible).
# Each EXITC_ORT_* hint may also come from the environment (handy under `pip install .`).
#
# Defines:
#   ONNXRuntime_FOUND, ONNXRuntime_INCLUDE_DIR, ONNXRuntime_LIBRARY (what to link),
#   ONNXRuntime_LIBRARY_REAL (the real file, for bundling), ONNXRuntime_LIBRARY_DIR (for RPATHs),
#   ONNXRuntime_SONAME, ONNXRuntime_FROM_WHEEL, and the imported target ONNXRuntime::ONNXRuntime.

foreach(_hint EXITC_ORT_INCLUDE_DIR EXITC_ORT_LIBRARY EXITC_ORT_ROOT)
  if(NOT ${_hint} AND DEFINED ENV{${_hint}})
    set(${_hint} "$ENV{${_hint}}")
  endif()
endforeach()

get_filename_component(_exitc_repo_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

find_path(ONNXRuntime_INCLUDE_DIR
  NAMES onnxruntime_cxx_api.h
  HINTS ${EXITC_ORT_INCLUDE_DIR}
        "${EXITC_ORT_ROOT}/include" "${EXITC_ORT_ROOT}/include/onnxruntime"
        "${_exitc_repo_root}/runtime/.deps/onnxruntime/include"
  PATH_SUFFIXES onnxruntime)

set(ONNXRuntime_FROM_WHEEL OFF)
if(EXITC_ORT_LIBRARY)
  set(_ort_lib "${EXITC_ORT_LIBRARY}")
else()
  find_library(ONNXRuntime_SYSTEM_LIBRARY NAMES onnxruntime HINTS "${EXITC_ORT_ROOT}/lib" "${EXITC_ORT_ROOT}/lib64")
  if(ONNXRuntime_SYSTEM_LIBRARY)
    set(_ort_lib "${ONNXRuntime_SYSTEM_LIBRARY}")
  else()
    set(_py "${EXITC_PYTHON}")
    if(NOT _py AND Python_EXECUTABLE)
      set(_py "${Python_EXECUTABLE}")
    endif()
    if(NOT _py AND Python3_EXECUTABLE)
      set(_py "${Python3_EXECUTABLE}")
    endif()
    if(NOT _py)
      find_program(_py NAMES python3 python)
    endif()
    if(_py)
      execute_process(
        COMMAND "${_py}" -c "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"
        OUTPUT_VARIABLE _capi OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
      if(_rc EQUAL 0 AND IS_DIRECTORY "${_capi}")
        file(GLOB _wheel_libs "${_capi}/libonnxruntime.so.1*" "${_capi}/libonnxruntime.*.dylib")
        if(_wheel_libs)
          list(SORT _wheel_libs)
          list(GET _wheel_libs -1 _ort_lib)
          set(ONNXRuntime_FROM_WHEEL ON)
        endif()
      endif()
    endif()
  endif()
endif()

if(_ort_lib)
  get_filename_component(ONNXRuntime_LIBRARY_REAL "${_ort_lib}" REALPATH)
  get_filename_component(_real_name "${ONNXRuntime_LIBRARY_REAL}" NAME)
  # The loader looks the library up by its SONAME (libonnxruntime.so.1). The wheel ships only
  # libonnxruntime.so.1.<minor>.<patch>, so give it its SONAME in a directory of our own.
  if(_real_name MATCHES "^(libonnxruntime\\.so\\.[0-9]+)")
    set(ONNXRuntime_SONAME "${CMAKE_MATCH_1}")
  else()
    set(ONNXRuntime_SONAME "${_real_name}")
  endif()
  get_filename_component(_lib_dir "${_ort_lib}" DIRECTORY)
  if(EXISTS "${_lib_dir}/${ONNXRuntime_SONAME}")
    set(ONNXRuntime_LIBRARY "${_ort_lib}")
    set(ONNXRuntime_LIBRARY_DIR "${_lib_dir}")
  else()
    set(ONNXRuntime_LIBRARY_DIR "${CMAKE_BINARY_DIR}/onnxruntime-lib")
    file(MAKE_DIRECTORY "${ONNXRuntime_LIBRARY_DIR}")
    file(CREATE_LINK "${ONNXRuntime_LIBRARY_REAL}" "${ONNXRuntime_LIBRARY_DIR}/${ONNXRuntime_SONAME}" SYMBOLIC)
    set(ONNXRuntime_LIBRARY "${ONNXRuntime_LIBRARY_DIR}/${ONNXRuntime_SONAME}")
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(ONNXRuntime
  REQUIRED_VARS ONNXRuntime_LIBRARY ONNXRuntime_INCLUDE_DIR
  REASON_FAILURE_MESSAGE
    "Run scripts/setup_runtime.sh (headers into runtime/.deps, onnxruntime wheel into .venv), or set EXITC_ORT_INCLUDE_DIR / EXITC_ORT_LIBRARY / EXITC_ORT_ROOT.")

if(ONNXRuntime_FOUND AND NOT TARGET ONNXRuntime::ONNXRuntime)
  add_library(ONNXRuntime::ONNXRuntime SHARED IMPORTED)
  set_target_properties(ONNXRuntime::ONNXRuntime PROPERTIES
    IMPORTED_LOCATION "${ONNXRuntime_LIBRARY}"
    IMPORTED_SONAME "${ONNXRuntime_SONAME}"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRuntime_INCLUDE_DIR}")
endif()
mark_as_advanced(ONNXRuntime_INCLUDE_DIR ONNXRuntime_SYSTEM_LIBRARY)
