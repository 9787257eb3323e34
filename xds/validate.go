package xds

import (
	"errors"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// validateResources runs the Envoy API's own constraints on every resource.
func validateResources(res map[resource.Type][]types.Resource) error {
	var errs []error
	for typ, items := range res {
		for _, r := range items {
			if err := validate(r); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", typeName(typ), cachev3.GetResourceName(r), err))
			}
		}
	}
	return errors.Join(errs...)
}

// validate runs ValidateAll (protoc-gen-validate) on m and on every typed
// config packed in an Any inside it, which ValidateAll does not open: the
// HTTP connection manager, ext_authz, the router and their per-route and
// protocol options. An Any whose type is not linked in is an error, as it
// would be for Envoy.
func validate(m proto.Message) error {
	var errs []error
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		return fmt.Errorf("%T cannot be validated", m)
	}
	if err := v.ValidateAll(); err != nil {
		errs = append(errs, err)
	}
	forEachAny(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err == nil {
			err = validate(inner)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
		}
	})
	return errors.Join(errs...)
}

// forEachAny calls f on every Any in m, at any depth, without opening them.
func forEachAny(m protoreflect.Message, f func(*anypb.Any)) {
	visit := func(m protoreflect.Message) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			f(a)
			return
		}
		forEachAny(m, f)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Message() != nil {
				for i, l := 0, v.List(); i < l.Len(); i++ {
					visit(l.Get(i).Message())
				}
			}
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			}
		case fd.Message() != nil:
			visit(v.Message())
		}
		return true
	})
}
