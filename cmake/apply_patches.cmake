# cmake -DUPSTREAM=<sdist root> -DPATCHES=<a;b;c> -P apply_patches.cmake
# UPSTREAM is the extracted sdist root (patch paths: vendor/llama.cpp/..., llama_cpp/...).
# Applies each patch in order with `patch -p1`; stops at the first that does not apply cleanly.
if(NOT UPSTREAM OR NOT IS_DIRECTORY "${UPSTREAM}")
  message(FATAL_ERROR "apply_patches: UPSTREAM='${UPSTREAM}' is not a directory")
endif()
find_program(PATCH_EXE patch)
if(NOT PATCH_EXE)
  message(FATAL_ERROR "apply_patches: the `patch` program is required (apt-get install patch)")
endif()
foreach(p IN LISTS PATCHES)
  get_filename_component(name "${p}" NAME)
  # --dry-run first so a failing patch leaves the tree untouched and the message names it.
  execute_process(COMMAND "${PATCH_EXE}" -p1 --forward --batch --dry-run -i "${p}"
                  WORKING_DIRECTORY "${UPSTREAM}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "apply_patches: ggml_patches/${name} does not apply to ${UPSTREAM}:\n${out}")
  endif()
  execute_process(COMMAND "${PATCH_EXE}" -p1 --forward --batch --no-backup-if-mismatch -i "${p}"
                  WORKING_DIRECTORY "${UPSTREAM}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "apply_patches: ggml_patches/${name} failed:\n${out}")
  endif()
  message(STATUS "apply_patches: applied ${name}")
endforeach()
