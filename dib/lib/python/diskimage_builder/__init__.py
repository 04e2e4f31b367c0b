"""dib's stand-in for the ``diskimage_builder`` package, for element helpers that
import from it (package-installs' bin/package-installs-squash imports
``diskimage_builder.logging_config``). On hooks' PYTHONPATH only when the real
package is not installed for dib's interpreter."""
